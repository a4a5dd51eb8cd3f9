import sys

from comfyfleet.main import main

sys.exit(main())
