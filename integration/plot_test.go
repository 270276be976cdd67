package integration

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// plotChurn draws footprint (solid) and used (dashed) over the rounds for
// each snapshotter, after-stop points at the round after the last.
func plotChurn(path string, wl churnWorkload, series []churnSeries) error {
	p := plot.New()
	p.Title.Text = "Churn in a container (" + wl.name + "): host footprint vs used (4 GiB quota)"
	p.X.Label.Text = fmt.Sprintf("round (%d = 5 s after the container stopped)", wl.rounds+1)
	p.Y.Label.Text = "MiB"
	p.Legend.Top = true
	p.Legend.Left = true
	colors := []color.Color{color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff}, color.RGBA{0x2c, 0xa0, 0x2c, 0xff}}
	for i, sr := range series {
		foot, used := make(plotter.XYs, 0, len(sr.Rounds)+1), make(plotter.XYs, 0, len(sr.Rounds)+1)
		for _, r := range sr.Rounds {
			foot = append(foot, plotter.XY{X: float64(r.Round), Y: float64(r.Footprint) / (1 << 20)})
			used = append(used, plotter.XY{X: float64(r.Round), Y: float64(r.Used) / (1 << 20)})
		}
		foot = append(foot, plotter.XY{X: float64(wl.rounds + 1), Y: float64(sr.AfterStop.Footprint) / (1 << 20)})
		used = append(used, plotter.XY{X: float64(wl.rounds + 1), Y: float64(sr.AfterStop.Used) / (1 << 20)})
		fl, err := plotter.NewLine(foot)
		if err != nil {
			return err
		}
		fl.Color, fl.Width = colors[i%len(colors)], vg.Points(2)
		ul, err := plotter.NewLine(used)
		if err != nil {
			return err
		}
		ul.Color, ul.Width, ul.Dashes = colors[i%len(colors)], vg.Points(1), []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(fl, ul)
		p.Legend.Add(sr.Snapshotter+" footprint", fl)
		p.Legend.Add(sr.Snapshotter+" used", ul)
	}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	return p.Save(10*vg.Inch, 6*vg.Inch, path)
}

// plotIO draws each snapshotter's ratio to overlayfs per workload as
// grouped bars, with overlayfs's 1.0 as a line.
func plotIO(path string, rep ioReport) error {
	p := plot.New()
	p.Title.Text = "Container I/O: ratio to overlayfs (higher is better), " + rep.Kernel
	p.Y.Label.Text = "× overlayfs (median)"
	p.Legend.Top = true
	names := make([]string, len(ioWorkloads))
	for i, w := range ioWorkloads {
		names[i] = w.Name
	}
	colors := []color.Color{color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff}, color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, color.RGBA{0x94, 0x67, 0xbd, 0xff}}
	var shown []string
	for _, sn := range rep.Snapshotters {
		if sn != "overlayfs" {
			shown = append(shown, sn)
		}
	}
	w := vg.Points(14)
	for i, sn := range shown {
		vals := make(plotter.Values, len(ioWorkloads))
		for j, wl := range ioWorkloads {
			vals[j] = rep.Ratios[wl.Name][sn]
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.Color = colors[i%len(colors)]
		bars.LineStyle.Width = 0
		bars.Offset = w * vg.Length(float64(i)-float64(len(shown)-1)/2)
		p.Add(bars)
		p.Legend.Add(sn, bars)
	}
	one, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: 1}, {X: float64(len(ioWorkloads)) - 0.5, Y: 1}})
	if err != nil {
		return err
	}
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(one)
	p.Legend.Add("overlayfs = 1", one)
	p.NominalX(names...)
	return p.Save(10*vg.Inch, 5*vg.Inch, path)
}
