"""`python -m itd`: the same command line as the `itd` script."""

from itd.cli import run

if __name__ == "__main__":
    run()
