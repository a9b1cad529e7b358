"""`python -m testbed up|down|status`: the local environment behind `make up`."""

import sys

from testbed.devenv import main

sys.exit(main())
