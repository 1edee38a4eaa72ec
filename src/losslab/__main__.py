from losslab.cli import train

train()
