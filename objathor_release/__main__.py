import sys

from objathor_release.cli import main

sys.exit(main())
