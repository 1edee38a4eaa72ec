from losslab.cli import train_command

train_command()
