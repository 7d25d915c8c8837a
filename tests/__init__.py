"""csdemu tests: unit/ runs pure code in-process; live/ starts real daemons,
nbdkit and fio. Shared references (naive.py, naive_ftl.py) and tolerances
live here."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
