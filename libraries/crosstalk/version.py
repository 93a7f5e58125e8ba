"""The one version every Crosstalk library reports (``@library(version=VERSION)``)."""

VERSION = "0.1.0"
