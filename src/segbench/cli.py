"""`python -m segbench <command> [hydra overrides]` and the `segbench` console script.

The command word is taken off argv before Hydra parses the rest, so every Hydra form works as
written: `segbench train model=unetpp optimizer=radam`, `segbench train -m seed=0,1,2`,
`segbench train --cfg job`, `segbench train --help`. Commands live in segbench.commands and are
imported by name; nothing heavy (torch, smp, Hydra) is imported before a command runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from segbench import SegbenchError, __version__, commands
from segbench.cli_args import has_flag
from segbench.suggest import closest

EXAMPLES = """examples:
  segbench train experiment=quickstart
  segbench train model=unetpp optimizer=radam
  segbench train -m optimizer=adam,sgd seed=0,1,2
  segbench train -m experiment=study/optimizers seed=0,1,2
  segbench report outputs/studies/optimizers/default
  segbench train experiment=quickstart logger=mlflow
  segbench train -m hparams_search=lr_adam hydra.sweeper.n_trials=20
  segbench predict run_dir=<run> input=images/ output=masks/
  segbench info -m model=unet,fpn,mcnet resolution=256
  segbench train --cfg job          # print the composed config
  segbench <command> --help         # config groups and options of a command"""


def usage() -> str:
    modules = {name: commands.load(name) for name in commands.NAMES}
    width = max(len(name) for name in modules)
    lines = ["usage: segbench <command> [hydra overrides] [-m] [--cfg job] [--help]",
             "       segbench --version", "", "commands:",
             *(f"  {name:<{width}}  {m.HELP}" for name, m in modules.items()), "", EXAMPLES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # `segbench train --help | head`: the reader left; say nothing more, like other CLIs.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141) from None


def _main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] in ("--version", "-V", "version"):
        print(f"segbench {__version__}")
        raise SystemExit(0)
    if any(a.startswith("install=") or a.startswith("uninstall=") for a in argv) and \
            has_flag(argv, "--shell-completion", "-sc"):
        uninstall = any(a.startswith("uninstall=") for a in argv)
        print(completion_script(commands.NAMES, uninstall=uninstall))
        raise SystemExit(0)
    name, rest = argv[0], argv[1:]
    if name not in commands.NAMES:
        near = closest(name, commands.NAMES, 1)
        guess = f"; did you mean {near[0]}?" if near else ""
        print(f"segbench: unknown command {name!r}{guess}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    if has_flag(rest, "-m", "--multirun") and has_flag(rest, "--cfg", "-c"):
        print(f"segbench {name}: error: --cfg prints one job's config and cannot be combined with "
              "-m; drop -m (the first value of each swept axis is not picked for you: give one)",
              file=sys.stderr)
        raise SystemExit(2)
    if has_flag(rest, "--shell-completion", "-sc") and "COMP_LINE" in os.environ:
        # Hydra completes the overrides of one app: hand it the line without the command word.
        words = os.environ["COMP_LINE"].split(" ")
        os.environ["COMP_LINE"] = " ".join(w for i, w in enumerate(words) if i != 1)
    try:
        rest = commands.prepare_argv(name, rest)
    except SegbenchError as err:
        print(f"segbench {name}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        commands.run_command(name, rest)
    except KeyboardInterrupt:
        print(f"\nsegbench {name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def completion_script(names: Iterable[str], uninstall: bool = False) -> str:
    """Bash (and zsh with bashcompinit) completion for `segbench`: command names first, then
    each command's config groups, options and values from Hydra's own completion.
    `eval "$(segbench --shell-completion install=bash)"`"""
    if uninstall:
        return "complete -r segbench 2> /dev/null"
    # Hydra's completion of one command's overrides (the command word is words[1]).
    hydra_query = ("COMP_POINT=$COMP_POINT COMP_LINE=$COMP_LINE segbench ${words[1]} "
                   "-sc query=bash 2> /dev/null")
    return f"""_segbench_completion()
{{
    local words=($COMP_LINE)
    local cword=${{#words[@]}}
    [[ "$COMP_LINE" == *" " ]] && cword=$((cword + 1))
    local word=""
    [[ "$COMP_LINE" != *" " ]] && word=${{words[$((cword - 1))]}}
    if (( cword <= 2 )); then
        COMPREPLY=($(compgen -W "{' '.join(names)} --help --version" -- "$word"))
        return
    fi
    local choices
    choices=$({hydra_query})
    COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "$word"))
}}
COMP_WORDBREAKS=${{COMP_WORDBREAKS//=}}
complete -o nospace -o default -F _segbench_completion segbench"""
