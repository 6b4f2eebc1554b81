import sys

from mm15.cli.main import main

sys.exit(main())
