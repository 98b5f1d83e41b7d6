# Sourced by the comparison scripts (bench/compare_*.sh): one model of a table that may span sessions.
#
#   train_or_resume DIR KIND [egc train flags...]     trains DIR/KIND, its summary in DIR/KIND.train.json
#
# Finished (DIR/KIND.train.json not empty: the trainer writes it only at the end): skipped. Killed with its
# session (checkpoints but no summary): resumed to the same budget by the run's own clock (the minutes
# since its last checkpoint are trained again), never evaluated half-trained. Otherwise: a new run with the
# given flags. $EGC is the egc command.
train_or_resume() {
  local dir=$1 kind=$2
  shift 2
  if [ -s "$dir/$kind.train.json" ]; then
    return 0
  elif [ -d "$dir/$kind/checkpoints" ]; then
    $EGC train --out "$dir/$kind" --resume --quiet > "$dir/$kind.train.json"
  else
    $EGC train "$@" --out "$dir/$kind" --quiet > "$dir/$kind.train.json"
  fi
}
