import sys

from mutation.cli import main

sys.exit(main())
