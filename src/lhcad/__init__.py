"""lhcad: weakly- and un-supervised anomaly detection for LHC dijet resonance searches."""

__version__ = "0.1.0"
