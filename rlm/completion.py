"""``rlm completion bash``: a completion script built from the parser, so it never goes stale."""

from __future__ import annotations

import argparse

__all__ = ["bash_script"]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(o for action in parser._actions for o in action.option_strings)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def bash_script(parser: argparse.ArgumentParser) -> str:
    """A bash function completing sub-commands, their options (nested ones too, e.g.
    ``rlm docker gc``) and file names."""
    cases = []
    top = _commands(parser)
    for name, sub in top.items():
        nested = _commands(sub)
        cases.append(f'        {name}) echo "{" ".join(_options(sub))}" ;;')
        if nested:
            cases.append(f'        "{name} +") echo "{" ".join(nested)}" ;;')
        for child_name, child in nested.items():
            options = " ".join(_options(child))
            cases.append(f'        "{name} {child_name}") echo "{options}" ;;')
    top_words = " ".join([*top, *_options(parser)])
    body = "\n".join(cases)
    return f"""# bash completion for rlm: eval "$(rlm completion bash)"
_rlm_words() {{
    case "$1" in
{body}
    esac
}}
_rlm_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" words key
    if [ "$COMP_CWORD" -le 1 ]; then
        COMPREPLY=($(compgen -W "{top_words}" -- "$cur"))
        return
    fi
    key="${{COMP_WORDS[1]}}"
    if [ "$COMP_CWORD" -ge 3 ] && [[ "${{COMP_WORDS[2]}}" != -* ]]; then
        key="${{COMP_WORDS[1]}} ${{COMP_WORDS[2]}}"
    fi
    words="$(_rlm_words "$key")"
    [ -z "$words" ] && words="$(_rlm_words "${{COMP_WORDS[1]}}")"
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    else
        local commands=""
        [ "$COMP_CWORD" -eq 2 ] && commands="$(_rlm_words "${{COMP_WORDS[1]}} +")"
        COMPREPLY=($(compgen -W "$commands" -- "$cur") $(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -o bashdefault -F _rlm_complete rlm"""
