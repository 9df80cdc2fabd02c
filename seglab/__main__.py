import sys

from seglab.cli import main

sys.exit(main())
