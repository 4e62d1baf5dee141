import sys

from asif_cli.main import main

sys.exit(main())
