from common.cli import run_script

run_script(__file__, "transfer_learning.py")
