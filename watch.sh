#!/bin/bash
# kill world-0 seed-style processes once they've printed their search-seed-100 row
for f in ss_red_kite_0 ss_velvet_lantern_0; do
  ( while [ $(grep -c '"search_seed"' /tmp/exp/s21/$f.err) -lt 2 ]; do sleep 10; done
    pkill -f "seeds 0 --prompts $(echo $f | sed 's/ss_//; s/_0$//; s/_/ /') --methods seed-style" ) &
done
wait
