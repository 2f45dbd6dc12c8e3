"""`python -m folio` runs the CLI."""

import sys

from folio.cli import main

sys.exit(main())
