"""Reports: a training run's evaluation rendered as one self-contained HTML page, PNG figures and JSON."""
