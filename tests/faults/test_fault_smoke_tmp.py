def test_base(base_run):
    from sftjudge.rundir import RunDir
    m = RunDir(base_run).manifest()
    print({s: (v["status"], v.get("seconds"), v.get("counts")) for s, v in m["stages"].items()})
