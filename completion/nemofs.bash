# bash completion for nemofs(1). Installed as share/bash-completion/completions/nemofs; works on its
# own too (`source completion/nemofs.bash`): it uses bash builtins only, not bash-completion's helpers.

# Remote sources (URLs) also take cache_size= retries= timeout= connections= (SEMANTICS section 11).
_nemofs_mount_options="ro rw debug output= safetensors commit_junk cache_size= retries= timeout= connections= allow_other allow_root default_permissions auto_unmount"

# Completes a path (files and folders) or, with "dirs", folders only; names keep their slashes and
# spaces thanks to -o filenames.
_nemofs_paths() {
  local cur=$1 kind=$2 IFS=$'\n'
  compopt -o filenames 2>/dev/null
  if [[ $kind == dirs ]]; then
    COMPREPLY+=($(compgen -d -- "$cur"))
  else
    COMPREPLY+=($(compgen -f -- "$cur"))
  fi
}

# A SOURCE: files and folders, and the URL schemes nemofs reads (SEMANTICS section 11) that the word
# begins (`h` offers hf:// http:// https://; an empty word offers files only). A scheme alone is
# inserted as it is: not quoted as a file name (readline would write `s3\://`), no space after it.
_nemofs_sources() {
  local cur=$1 s schemes=0
  if [[ -n $cur && $cur != */* && $cur != *:* ]]; then
    for s in hf:// http:// https:// s3://; do
      [[ $s == "$cur"* ]] && COMPREPLY+=("$s") && ((schemes++))
    done
  fi
  _nemofs_paths "$cur" files
  if ((schemes && schemes == ${#COMPREPLY[@]})); then
    compopt +o filenames -o nospace 2>/dev/null || :
  fi
}

# Mountpoints of the active nemofs mounts (type fuse.nemofs), unescaped from /proc/self/mounts.
_nemofs_mountpoints() {
  local cur=$1 dev mp type rest IFS=$' \t\n'
  [[ -r /proc/self/mounts ]] || return
  while read -r dev mp type rest; do
    [[ $type == fuse.nemofs ]] || continue
    mp=$(printf '%b' "${mp//\\/\\0}")
    [[ $mp == "$cur"* ]] && COMPREPLY+=("$mp")
  done </proc/self/mounts
}

_nemofs() {
  local cur prev cmd i npos=0
  COMPREPLY=()
  cur=${COMP_WORDS[COMP_CWORD]}
  prev=${COMP_WORDS[COMP_CWORD - 1]}

  if ((COMP_CWORD == 1)); then
    COMPREPLY=($(compgen -W "mount umount unmount inspect export status help --help --version" -- "$cur"))
    return 0
  fi
  cmd=${COMP_WORDS[1]}

  case $cmd in
    mount)
      # bash splits words at '=', so `-o ro,output=PA` arrives as "-o" "ro,output" "=" "PA".
      if [[ $cur == = && $prev == *output && ${COMP_WORDS[COMP_CWORD - 2]} == -o ]]; then
        _nemofs_paths "" files
        for i in "${!COMPREPLY[@]}"; do COMPREPLY[i]="=${COMPREPLY[i]}"; done
        return 0
      fi
      if [[ $prev == = && ${COMP_WORDS[COMP_CWORD - 2]} == *output && ${COMP_WORDS[COMP_CWORD - 3]} == -o ]]; then
        _nemofs_paths "$cur" files
        return 0
      fi
      if [[ $prev == -o ]]; then
        # Complete the last item of a comma-separated list, keeping what comes before it.
        local head="" last=$cur o
        if [[ $cur == *,* ]]; then
          head=${cur%,*},
          last=${cur##*,}
        fi
        for o in $_nemofs_mount_options; do
          [[ $o == "$last"* ]] && COMPREPLY+=("$head$o")
        done
        [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]] && compopt -o nospace 2>/dev/null
        return 0
      fi
      if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "-o -f -d --help" -- "$cur"))
        return 0
      fi
      # Positional arguments: SOURCE (a file or folder), then MOUNTPOINT (a folder).
      for ((i = 2; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
          -o) ((i++))
            # skip the "=" "VALUE" words bash split off an option value
            while [[ ${COMP_WORDS[i + 1]} == = ]]; do ((i += 2)); done ;;
          -*) ;;
          *) ((npos++)) ;;
        esac
      done
      if ((npos == 0)); then
        _nemofs_sources "$cur"
      elif ((npos == 1)); then
        _nemofs_paths "$cur" dirs
      fi
      ;;
    umount | unmount)
      if ((COMP_CWORD == 2)); then
        _nemofs_mountpoints "$cur"
        ((${#COMPREPLY[@]})) || _nemofs_paths "$cur" dirs
      fi
      ;;
    inspect)
      if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "--json" -- "$cur"))
      else
        for ((i = 2; i < COMP_CWORD; i++)); do [[ ${COMP_WORDS[i]} == -* ]] || ((npos++)); done
        ((npos == 0)) && _nemofs_sources "$cur"
      fi
      ;;
    export)
      # export SOURCE DEST [--select PATH] [--no-sync]: PATH names a folder inside the checkpoint, not on disk.
      if [[ $prev == --select ]]; then
        return 0
      elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "--select --no-sync --help" -- "$cur"))
      else
        for ((i = 2; i < COMP_CWORD; i++)); do
          case ${COMP_WORDS[i]} in
            --select) ((i++)) ;;
            -*) ;;
            *) ((npos++)) ;;
          esac
        done
        if ((npos == 0)); then
          _nemofs_sources "$cur"
        elif ((npos == 1)); then
          _nemofs_paths "$cur" files
        fi
      fi
      ;;
    status)
      ((COMP_CWORD == 2)) && COMPREPLY=($(compgen -W "--json" -- "$cur"))
      ;;
  esac
  return 0  # nothing to offer is not an error (compgen's status would otherwise leak out)
}

complete -F _nemofs nemofs
