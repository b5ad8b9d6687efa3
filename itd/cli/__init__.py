"""The command line: `commands.py` declares the click commands and calls the library; `terminal.py` renders what they
print (consoles, progress bars, result tables). The `itd` console script is `itd.cli:main`.
"""

from itd.cli.commands import cli, main, run

__all__ = ["main", "run", "cli"]
