# bench/report/throughput.gp - gnuplot template of bench/run: delivered
# recipients per second at the sink (0.5 s intervals) against the seconds
# since the source started (backlog: since the sink was released).
# @PNG@, @TITLE@ and @PLOTS@ are filled in by bench/run.
set terminal pngcairo size 1000,500 noenhanced font "sans,10"
set output "@PNG@"
set title "@TITLE@"
set xlabel "seconds since injection started"
set ylabel "delivered recipients/s"
set grid
set key outside right top
set yrange [0:*]
set xrange [0:*]
plot @PLOTS@
