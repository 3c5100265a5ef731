"""``python -m cropdoc``: the same as the ``cropdoc`` command."""

from cropdoc.cli import main

main()
