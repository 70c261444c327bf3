"""Experiment tracking in MLflow: each cycle one MLflow run, the champion in the Model Registry (see mlflow_run.py)."""
