import sys

from distopt.launch import main

sys.exit(main())
