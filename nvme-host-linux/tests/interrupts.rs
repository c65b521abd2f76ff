//! Interrupt-driven queue pairs (`QueueOptions::interrupts`, `IoQueuePair::wait`) against the
//! software controller in this process, which signals a vector's eventfd as a device's MSI-X
//! message would (through `VFIO_DEVICE_SET_IRQS`). The same code runs over VFIO in the VM
//! suite (`nvme-hwtest`, scenario `interrupts-in-two-processes`).

use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use nvme_host_linux::regs::opcode::NvmOpcode;
use nvme_host_linux::sim::CommandMatch;
use nvme_host_linux::testkit::pattern;
use nvme_host_linux::{Controller, QueueOptions};

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

#[test]
fn an_interrupt_queue_completes_io_through_its_vector() {
    let ctrl = Controller::attach("trtype:sim size:16M").unwrap();
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(32).with_interrupts(true))
        .unwrap();
    assert_eq!(qp.interrupt_vector(), Some(qp.qid()), "vector = qid");
    assert_eq!(qp.interrupt_fallback(), None);
    let mut buf = ctrl.alloc_dma(16 * 4096).unwrap();
    for round in 0..8u64 {
        pattern::fill(round, round * 128, 512, buf.as_mut_slice());
        for i in 0..16u64 {
            let lba = round * 128 + i * 8;
            let range = buf
                .slice(i as usize * 4096..(i as usize + 1) * 4096)
                .unwrap();
            qp.write(1, lba, range, i).unwrap();
        }
        let mut done = 0;
        while done < 16 {
            done += qp
                .wait(Some(Duration::from_secs(10)), usize::MAX, |_, r| {
                    r.expect("write")
                })
                .unwrap();
        }
        buf.as_mut_slice().fill(0);
        qp.read_sync(1, round * 128, &mut buf).unwrap();
        pattern::check(round, round * 128, 512, buf.as_slice()).unwrap();
    }
    let signalled = ctrl.sim().unwrap().interrupts_signalled();
    assert!(
        signalled >= 128,
        "{signalled} interrupts for 136 completions"
    );
    assert!(qp.interrupts_seen() > 0, "wait never consumed an interrupt");
    assert_eq!(
        qp.wait(Some(Duration::from_secs(1)), 8, |_, _| panic!(
            "nothing outstanding"
        ))
        .unwrap(),
        0
    );
}

#[test]
fn waiting_on_an_interrupt_sleeps() {
    let ctrl = Controller::attach("trtype:sim size:16M").unwrap();
    let mut qp = ctrl
        .alloc_io_queue(QueueOptions::new(8).with_interrupts(true))
        .unwrap();
    let delay = Duration::from_millis(400);
    ctrl.sim().unwrap().faults().delay_nth(
        CommandMatch::io(NvmOpcode::Read as u8).on_queue(qp.qid()),
        1,
        delay,
        false,
    );
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    qp.read(1, 0, &mut buf, 7).unwrap();
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let mut got = None;
    let n = qp
        .wait(Some(Duration::from_secs(10)), 1, |t, r| {
            got = Some((t, r.is_ok()))
        })
        .unwrap();
    let (wall, cpu) = (wall.elapsed(), thread_cpu() - cpu);
    assert_eq!((n, got), (1, Some((7, true))));
    assert!(wall >= delay - Duration::from_millis(50), "{wall:?}");
    // Polling would burn the whole wait on this thread; sleeping on the eventfd costs a few
    // system calls (the bound leaves room for a slow machine's scheduling).
    assert!(
        cpu < wall / 4,
        "the thread used {cpu:?} of CPU in a {wall:?} wait"
    );
    assert!(qp.interrupts_seen() >= 1);
}

#[test]
fn a_queue_past_the_controller_s_vectors_is_polled_and_says_why() {
    let ctrl = Controller::attach("trtype:sim size:16M vectors:2").unwrap();
    let with_irq = QueueOptions::new(8).with_interrupts(true);
    let q1 = ctrl.alloc_io_queue(with_irq).unwrap();
    let mut q2 = ctrl.alloc_io_queue(with_irq).unwrap();
    assert_eq!((q1.qid(), q1.interrupt_vector()), (1, Some(1)));
    assert_eq!(q2.interrupt_vector(), None);
    let why = q2.interrupt_fallback().expect("a reason").to_string();
    assert!(
        why.contains("2 MSI-X vectors") && why.contains("polled"),
        "{why}"
    );
    // The polled queue still waits (by polling) and completes.
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    q2.read(1, 0, &mut buf, 1).unwrap();
    let n = q2
        .wait(Some(Duration::from_secs(10)), 1, |_, r| r.unwrap())
        .unwrap();
    assert_eq!(n, 1);
    // Without asking, no interrupts and no reason.
    let q3 = ctrl.alloc_io_queue(QueueOptions::new(8)).unwrap();
    assert_eq!(
        (q3.interrupt_vector(), q3.interrupt_fallback()),
        (None, None)
    );
}

#[test]
fn a_vector_freed_by_a_dropped_queue_serves_the_next_one() {
    let ctrl = Controller::attach("trtype:sim size:16M").unwrap();
    let opts = QueueOptions::new(8).with_interrupts(true);
    let mut buf = ctrl.alloc_dma(4096).unwrap();
    for _ in 0..3 {
        let mut qp = ctrl.alloc_io_queue(opts).unwrap();
        assert_eq!(qp.interrupt_vector(), Some(1));
        qp.read(1, 0, &mut buf, 1).unwrap();
        qp.wait(Some(Duration::from_secs(10)), 1, |_, r| r.unwrap())
            .unwrap();
    }
    let signalled = ctrl.sim().unwrap().interrupts_signalled();
    assert!(signalled >= 3, "{signalled}");
}
