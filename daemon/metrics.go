package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/snugfs/snug/differ"
	"github.com/snugfs/snug/fsck"
	"github.com/snugfs/snug/images"
	"github.com/snugfs/snug/snapshotter"
)

// metricsSource is what the metrics are read from at each scrape.
type metricsSource interface {
	Status(ctx context.Context) ([]images.ImageStatus, error)
	Totals() images.Totals
	Pool() snapshotter.PoolSize
	Layers() differ.Counts
}

// served is the metrics' source: the images in service, the
// snapshotter's pool, and the differ's layers.
type served struct {
	*images.Manager
	sn     *snapshotter.Snapshotter
	differ *differ.Differ
}

// Layers is how the differ's layers went.
func (s served) Layers() differ.Counts { return s.differ.Counts() }

// Pool is how many images the pool holds, mounted, and aims at.
func (s served) Pool() snapshotter.PoolSize { return s.sn.Pool() }

// incidentSource is the error monitor's side of the metrics.
type incidentSource interface {
	Counts() fsck.Counts
	StepStats() []fsck.StepStat
}

// collector reads the snapshotter and the error monitor at each scrape:
// nothing is kept between scrapes, so a removed image's series disappear
// with it.
type collector struct {
	src       metricsSource
	incidents incidentSource
}

var (
	imageLabels = []string{"snapshot", "id", "kind"}
	descQuota   = prometheus.NewDesc("snug_image_quota_bytes", "Size of the image's filesystem: the most its container can store.", imageLabels, nil)
	descWindow  = prometheus.NewDesc("snug_image_window_bytes", "End of the image's packing window.", imageLabels, nil)
	descUsed    = prometheus.NewDesc("snug_image_used_bytes", "Bytes the container stores in the image.", imageLabels, nil)
	descFoot    = prometheus.NewDesc("snug_image_footprint_bytes", "Bytes the image file takes on the host.", imageLabels, nil)
	descErrors  = prometheus.NewDesc("snug_image_fs_errors", "ext4 errors recorded in the image.", imageLabels, nil)
	descENOSPC  = prometheus.NewDesc("snug_image_enospc_retries_exceeded", "Allocations ext4 gave up on after retrying (an ENOSPC a writer saw; a lower bound).", imageLabels, nil)
	descIGrows  = prometheus.NewDesc("snug_image_grows_total", "Window grows of the image since the daemon started.", imageLabels, nil)
	descIRecl   = prometheus.NewDesc("snug_image_reclaimed_bytes_total", "Host bytes the image's reclaims gave back since the daemon started.", imageLabels, nil)
	descIFull   = prometheus.NewDesc("snug_image_window_full_total", "Checks that found the image's window full before its quota.", imageLabels, nil)
	descIFlush  = prometheus.NewDesc("snug_image_flushes_dropped_total", "Checks that found the image's loop device dropping cache flushes (write through).", imageLabels, nil)

	descGrows     = prometheus.NewDesc("snug_grows_total", "Window grows since the daemon started.", nil, nil)
	descGrowBytes = prometheus.NewDesc("snug_grow_bytes_total", "Bytes windows grew by since the daemon started.", nil, nil)
	descReclaims  = prometheus.NewDesc("snug_reclaims_total", "Reclaims (trim and repack) since the daemon started.", nil, nil)
	descReclaimed = prometheus.NewDesc("snug_reclaimed_bytes_total", "Host bytes reclaims gave back since the daemon started.", nil, nil)
	descTrimmed   = prometheus.NewDesc("snug_trimmed_bytes_total", "Bytes trimmed from running containers' images since the daemon started.", nil, nil)
	descFull      = prometheus.NewDesc("snug_window_full_total", "Checks that found a window full before its quota: writers may have seen ENOSPC.", nil, nil)
	descFlushes   = prometheus.NewDesc("snug_flushes_dropped_total", "Checks that found a mounted image's loop device dropping cache flushes (write through), since the daemon started: each was set back to write back unless the log says otherwise.", nil, nil)
	descImages    = prometheus.NewDesc("snug_images", "Images served, by kind.", []string{"kind"}, nil)
	descSkipped   = prometheus.NewDesc("snug_reclaims_skipped_total", "Reclaims at a container's stop that found its image packed already, since the daemon started.", nil, nil)
	descPoolReady = prometheus.NewDesc("snug_pool_ready_images", "Ready-made images in the pool.", nil, nil)
	descPoolMnt   = prometheus.NewDesc("snug_pool_mounted_images", "Ready-made images the pool holds mounted (pool.premount), each with a loop device.", nil, nil)
	descPoolAim   = prometheus.NewDesc("snug_pool_target_images", "Images the pool aims at: the policy's [pool], following the recent rate of Prepares.", nil, nil)
	descLayers    = prometheus.NewDesc("snug_layers_applied_total", "Layers snug's differ applied since the daemon started, by way: written from their tar (tar), onto the mounts as they were not a layer's extraction (mounts), onto the mounts after the one-pass writer refused them (refused).", []string{"way"}, nil)

	descReports     = prometheus.NewDesc("snug_fs_error_reports_total", "ext4 error reports received (fanotify FAN_FS_ERROR, sysfs, online checks) since the daemon started.", nil, nil)
	descIncidents   = prometheus.NewDesc("snug_incidents_total", "Incidents opened since the daemon started.", nil, nil)
	descOpen        = prometheus.NewDesc("snug_incidents_open", "Incidents being worked on.", nil, nil)
	descRepaired    = prometheus.NewDesc("snug_incident_repairs_total", "Images repaired offline since the daemon started.", nil, nil)
	descQuarantined = prometheus.NewDesc("snug_incident_quarantined_total", "Images quarantined since the daemon started.", nil, nil)
	descRestarted   = prometheus.NewDesc("snug_incident_restarts_total", "Containers started again after a repair since the daemon started.", nil, nil)
	descSteps       = prometheus.NewDesc("snug_incident_steps_total", "Incident steps since the daemon started, by step and result.", []string{"step", "result"}, nil)
	descStepSecs    = prometheus.NewDesc("snug_incident_step_seconds_total", "Time incident steps took since the daemon started, by step and result.", []string{"step", "result"}, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQuota, descWindow, descUsed, descFoot, descErrors, descENOSPC, descIGrows, descIRecl, descIFull, descIFlush,
		descGrows, descGrowBytes, descReclaims, descReclaimed, descTrimmed, descFull, descFlushes, descImages, descSkipped, descPoolReady, descPoolMnt, descPoolAim, descLayers,
		descReports, descIncidents, descOpen, descRepaired, descQuarantined, descRestarted, descSteps, descStepSecs} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	images, err := c.src.Status(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descImages, err)
		return
	}
	kinds := map[string]int{}
	for _, im := range images {
		kinds[im.Kind]++
		if im.Problem != "" {
			continue
		}
		l := []string{im.Snapshot, im.ID, im.Kind}
		gauge := func(d *prometheus.Desc, v int64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), l...)
		}
		gauge(descQuota, im.QuotaBytes)
		gauge(descWindow, im.WindowBytes)
		gauge(descUsed, im.UsedBytes)
		gauge(descFoot, im.FootprintBytes)
		gauge(descErrors, im.Errors)
		if im.Kind != "active" {
			continue
		}
		counter := func(d *prometheus.Desc, v int64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
		}
		counter(descENOSPC, im.ENOSPCRetriesExceeded)
		counter(descIGrows, im.Grows)
		counter(descIRecl, im.ReclaimedBytes)
		counter(descIFull, im.WindowFull)
		counter(descIFlush, im.FlushesDropped)
	}
	for k, n := range kinds {
		ch <- prometheus.MustNewConstMetric(descImages, prometheus.GaugeValue, float64(n), k)
	}
	t := c.src.Totals()
	counters(ch, []total{{descGrows, t.Grows}, {descGrowBytes, t.GrowBytes}, {descReclaims, t.Reclaims},
		{descReclaimed, t.ReclaimedBytes}, {descTrimmed, t.TrimmedBytes}, {descFull, t.WindowFull}, {descSkipped, t.ReclaimsSkipped},
		{descFlushes, t.FlushesDropped}})
	pool := c.src.Pool()
	ch <- prometheus.MustNewConstMetric(descPoolReady, prometheus.GaugeValue, float64(pool.Ready))
	ch <- prometheus.MustNewConstMetric(descPoolMnt, prometheus.GaugeValue, float64(pool.Mounted))
	ch <- prometheus.MustNewConstMetric(descPoolAim, prometheus.GaugeValue, float64(pool.Target))
	layers := c.src.Layers()
	for way, n := range map[string]int64{"tar": layers.FromTar, "mounts": layers.ThroughMounts, "refused": layers.Refused} {
		ch <- prometheus.MustNewConstMetric(descLayers, prometheus.CounterValue, float64(n), way)
	}
	if c.incidents == nil {
		return
	}
	ic := c.incidents.Counts()
	counters(ch, []total{{descReports, ic.Reports}, {descIncidents, ic.Incidents}, {descRepaired, ic.Repaired},
		{descQuarantined, ic.Quarantined}, {descRestarted, ic.Restarted}})
	ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(ic.Open))
	for _, st := range c.incidents.StepStats() {
		ch <- prometheus.MustNewConstMetric(descSteps, prometheus.CounterValue, float64(st.Count), st.Step, st.Result)
		ch <- prometheus.MustNewConstMetric(descStepSecs, prometheus.CounterValue, st.Seconds, st.Step, st.Result)
	}
}

// total is one unlabelled counter and its value.
type total struct {
	d *prometheus.Desc
	v int64
}

func counters(ch chan<- prometheus.Metric, cs []total) {
	for _, c := range cs {
		ch <- prometheus.MustNewConstMetric(c.d, prometheus.CounterValue, float64(c.v))
	}
}

// serveMetrics serves /metrics on l until ctx ends. The daemon's own
// process metrics (CPU, memory) come with it.
func serveMetrics(ctx context.Context, l net.Listener, src metricsSource, incidents incidentSource) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{src: src, incidents: incidents}, prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}), prometheus.NewGoCollector())
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.G(ctx).WithField("address", l.Addr().String()).Info("serving metrics")
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
