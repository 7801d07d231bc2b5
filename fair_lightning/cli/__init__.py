"""Entry points, each thin: parse the command line, call the composition root
(`fair_lightning.experiment`) or a library function, print the result or an `error:` line."""
