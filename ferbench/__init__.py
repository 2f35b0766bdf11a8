"""ferbench: a reproducibility benchmark harness for facial-emotion-recognition papers."""

__version__ = "0.1.0"
