# Sourced by the launch scripts (run from the repository root, as they document): `run CMD...`
# runs CMD, or with dry=1 prints it, shell-quoted so the line can be pasted.
run() {  # prints the command, shell-quoted so it can be pasted (--dry-run), or runs it
  if ((dry)); then
    local out=() a
    for a in "$@"; do
      if [[ $a =~ ^[][A-Za-z0-9_./:=@%+,~-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
    done
    echo "${out[*]}"
  else
    "$@"
  fi
}
