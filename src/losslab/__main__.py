from losslab.commands.cli import train_command

train_command()
