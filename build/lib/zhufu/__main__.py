import sys

from zhufu.cli import main

sys.exit(main())
