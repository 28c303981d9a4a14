import sys

from implicit_icl.cli import main

sys.exit(main())
