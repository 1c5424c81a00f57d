"""fea20k: build, grow and publish FEA-20K-style facial emotion analysis datasets."""

__version__ = "0.1.0"
