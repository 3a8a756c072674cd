#!/usr/bin/env bash
# deployments/image-steps.sh: run the build stage of deployments/Dockerfile without Docker.
#
#   deployments/image-steps.sh [SERVICE...]     default: admitter ledger sink
#
# For each service it makes a clean directory, lays the build context out the way Docker
# would (the repository less .dockerignore), and carries out the build stage's own ARG,
# WORKDIR, COPY and RUN instructions, read from the Dockerfile, in order: the image's root
# becomes the clean directory, so `WORKDIR /src` is <dir>/src and `-o /out/app` is
# <dir>/out/app. Then it checks what the runtime stage copies (`COPY --from=build`) exists
# and is a static binary (the runtime image is distroless/static). Any failing step fails
# the script, as it would fail `docker build`. CI runs it (Docker is not available there).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dockerfile="$repo/deployments/Dockerfile"
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(admitter ledger sink)

log() { echo "image-steps: $*" >&2; }

# The Dockerfile's instructions, one per line (continuations joined, comments dropped).
instructions() {
  sed -e 's/[[:space:]]*#.*$//' "$dockerfile" | awk '
    /\\$/ { sub(/\\$/, ""); buf = buf $0 " "; next }
    { line = buf $0; buf = ""; if (line ~ /[^[:space:]]/) print line }'
}

build_one() {
  local service=$1 root ctx workdir=/ stage=0 runtime_copy=()
  root=$(mktemp -d "${TMPDIR:-/tmp}/tally-image-$service.XXXXXX")
  ctx="$root.context"
  mkdir -p "$ctx"
  trap 'rm -rf "$root" "$ctx"' RETURN
  # The build context: the repository less .dockerignore (its lines are top-level names).
  local excludes=()
  if [ -f "$repo/.dockerignore" ]; then
    while IFS= read -r pat; do
      pat=${pat%%#*}; pat=$(echo "$pat" | xargs)
      [ -n "$pat" ] && excludes+=("--exclude=./$pat")
    done < "$repo/.dockerignore"
  fi
  tar -C "$repo" "${excludes[@]}" -cf - . | tar -C "$ctx" -xf -
  declare -A args=([SERVICE]="$service")
  # Map an absolute path of the image into the clean root.
  inroot() { case "$1" in /*) echo "$root$1" ;; *) echo "$root$workdir/$1" ;; esac; }
  subst() { # expand ${NAME} and $NAME of the ARGs
    local s=$1 k
    for k in "${!args[@]}"; do s=${s//\$\{$k\}/${args[$k]}}; s=${s//\$$k/${args[$k]}}; done
    echo "$s"
  }
  while IFS= read -r line; do
    local op rest
    op=$(echo "$line" | awk '{print toupper($1)}'); rest=${line#* }
    case "$op" in
      FROM) stage=$((stage + 1)) ;;
      ARG)
        local name=${rest%%=*} val=""
        [[ "$rest" == *=* ]] && val=${rest#*=}
        [ -n "${args[$name]+x}" ] || args[$name]=$val ;;
      WORKDIR) [ "$stage" -eq 1 ] && { workdir=$(subst "$rest"); mkdir -p "$root$workdir"; } ;;
      COPY)
        if [ "$stage" -gt 1 ]; then
          [[ "$rest" == --from=build* ]] && runtime_copy+=("$(echo "$rest" | awk '{print $2}')")
          continue
        fi
        read -r -a parts <<< "$(subst "$rest")"
        local dst=${parts[-1]} n=$((${#parts[@]} - 1)) i
        local target; target=$(inroot "$dst")
        [[ "$dst" == */ || "$dst" == . || $n -gt 1 ]] && mkdir -p "$target"
        for ((i = 0; i < n; i++)); do
          local src="$ctx/${parts[$i]}"
          [ -e "$src" ] || { log "$service: COPY ${parts[$i]}: not in the build context"; return 1; }
          if [ -d "$src" ]; then mkdir -p "$target"; cp -a "$src/." "$target/"
          else cp -a "$src" "$target"; fi
        done ;;
      RUN)
        [ "$stage" -eq 1 ] || continue
        local cmd; cmd=$(subst "$rest")
        # The image's own directories, rooted in the clean directory.
        cmd=$(echo "$cmd" | sed -E "s#(^|[[:space:]=])/(out|src)(/|[[:space:]]|\$)#\\1$root/\\2\\3#g")
        log "$service: RUN $rest"
        (cd "$root$workdir" && env -u GOWORK GOFLAGS= SERVICE="$service" bash -ec "$cmd") \
          || { log "$service: RUN failed: $rest"; return 1; } ;;
      ENTRYPOINT|USER|ENV|EXPOSE|CMD|LABEL) ;;
      *) log "$service: unknown instruction $op"; return 1 ;;
    esac
  done < <(instructions)
  local f
  for f in "${runtime_copy[@]}"; do
    [ -x "$root$f" ] || { log "$service: the runtime stage copies $f, which the build stage did not make"; return 1; }
    if command -v file >/dev/null && ! file "$root$f" | grep -q 'statically linked'; then
      log "$service: $f is not statically linked (the runtime image is distroless/static)"; return 1
    fi
    log "$service: built $f ($(du -h "$root$f" | cut -f1))"
  done
}

for s in "${services[@]}"; do build_one "$s"; done
log "ok: ${services[*]}"
