"""Events: generation (Pythia 8 + FastJet), LHC Olympics readers, storage and dataset assembly."""
