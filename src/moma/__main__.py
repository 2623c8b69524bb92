import sys

from moma.cli.main import main

sys.exit(main())
