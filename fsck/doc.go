// Package fsck is snug's ext4 error monitor: it notices an error in a
// container's image at once, contains it to the containers on that image,
// checks and repairs the image, and starts them again, while every other
// container keeps running.
//
//   - Monitor watches every mounted image with fanotify FAN_FS_ERROR (a
//     FAN_MARK_FILESYSTEM mark each; the event's fsid names the image), or
//     ext4's sysfs errors_count where the kernel lacks it.
//   - Doctor turns reports into incidents and takes each through the steps
//     the policy asks for (config [fsck] action): find the containers,
//     freeze them, check the image online (imagefs.Mounted.Scrub), stop
//     them, repair the image offline (Images.Offline), start them again.
//     Each step is written to the incident's file before it acts, so a
//     restarted daemon resumes it; each is published as a containerd event
//     (/snug/incident/STEP).
//   - Containerd is the pipeline's view of containerd (pause, stop, start,
//     publish), through its client.
//
// An image that cannot be made clean, or breaks too often, is quarantined:
// kept, unmounted, its containers stopped. Errors on a read-only layer are
// checked and reported without stopping anything. docs/design.md explains
// each choice.
//
// # Files
//
// doctor.go holds the Doctor and what it is told (mounts, reports);
// states.go names the states, steps and outcomes; table.go is the state
// machine, a table of steps ({from, step, skip, run, next}); pipeline.go
// drives an incident through it, recording each step; steps.go is each
// step's work; scrub.go the online check on demand and on schedule;
// counters.go the metrics; incident.go the records; monitor.go and
// sysfs.go the detection; containerd.go and events.go containerd.
//
// # Locks
//
// None is held across disk I/O or a call to containerd, and none is taken
// while another is held, except Monitor.mu, then sysfsPoller.mu (Watch and
// Unwatch). Doctor.mu protects the open incidents (active, more) and Run's
// context; counters.mu the step counts; store.mu the incidents in memory
// (each incident's file is written by the one goroutine working it);
// Monitor.mu the watched images; Containerd.mu the client; eventQueue.mu
// the queued events.
//
//	doctor, err := fsck.NewDoctor(root+"/incidents", cfg.Fsck, sn, fsck.NewContainerd(addr, sn))
//	sn.Images().Observe(ctx, doctor) // watch every image mounted, now and later
//	go doctor.Run(ctx)
package fsck
