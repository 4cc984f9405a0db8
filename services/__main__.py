"""`python -m facestream.services ...`: the `facestream` command."""

import sys

from facestream.services.main import main

sys.exit(main())
