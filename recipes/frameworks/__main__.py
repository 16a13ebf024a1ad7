from common.cli import run_script

run_script(__file__, "frameworks.py")
