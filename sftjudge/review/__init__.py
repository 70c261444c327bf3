"""Human review: a person grades a frozen sample of a run's answers; judge-human agreement; release."""
