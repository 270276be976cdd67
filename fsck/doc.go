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
//	doctor, err := fsck.NewDoctor(root+"/incidents", cfg.Fsck, sn, fsck.NewContainerd(addr, sn))
//	sn.Observe(ctx, doctor) // watch every image mounted, now and later
//	go doctor.Run(ctx)
package fsck
