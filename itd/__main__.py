"""`python -m itd`: the same command line as the `itd` script."""

from itd.cli.commands import run

if __name__ == "__main__":
    run()
