"""`python -m service`: the same as the `service` console script."""

import sys

from service.cli import main

sys.exit(main())
