from csdemu.cli import main

main(prog_name="csdemu")
