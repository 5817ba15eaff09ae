"""Entry point: ``python train.py method=tnt signal_frac=0.01`` (see conf/config.yaml)."""

from lhcad.cli.train import main

if __name__ == "__main__":
    main()
