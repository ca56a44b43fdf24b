import sys

from corral.worker.runner import main

sys.exit(main())
