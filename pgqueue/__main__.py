from pgqueue.cli import run

run()
