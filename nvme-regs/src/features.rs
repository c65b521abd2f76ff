//! Feature identifiers and the encodings of the features the driver uses.

/// Feature identifiers (FID) of Get / Set Features.
pub mod fid {
    /// Arbitration.
    pub const ARBITRATION: u8 = 0x01;
    /// Power Management.
    pub const POWER_MANAGEMENT: u8 = 0x02;
    /// LBA Range Type.
    pub const LBA_RANGE_TYPE: u8 = 0x03;
    /// Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Error Recovery.
    pub const ERROR_RECOVERY: u8 = 0x05;
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    /// Interrupt Coalescing.
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    /// Interrupt Vector Configuration.
    pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
    /// Write Atomicity Normal.
    pub const WRITE_ATOMICITY: u8 = 0x0a;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Autonomous Power State Transition.
    pub const AUTONOMOUS_POWER_STATE: u8 = 0x0c;
    /// Host Memory Buffer.
    pub const HOST_MEMORY_BUFFER: u8 = 0x0d;
    /// Timestamp.
    pub const TIMESTAMP: u8 = 0x0e;
    /// Keep Alive Timer.
    pub const KEEP_ALIVE_TIMER: u8 = 0x0f;
    /// Software Progress Marker.
    pub const SOFTWARE_PROGRESS_MARKER: u8 = 0x80;
    /// Host Identifier.
    pub const HOST_IDENTIFIER: u8 = 0x81;
}

/// The name of a feature identifier, as nvme-cli prints it.
pub const fn feature_name(fid: u8) -> &'static str {
    match fid {
        fid::ARBITRATION => "Arbitration",
        fid::POWER_MANAGEMENT => "Power Management",
        fid::LBA_RANGE_TYPE => "LBA Range Type",
        fid::TEMPERATURE_THRESHOLD => "Temperature Threshold",
        fid::ERROR_RECOVERY => "Error Recovery",
        fid::VOLATILE_WRITE_CACHE => "Volatile Write Cache",
        fid::NUMBER_OF_QUEUES => "Number of Queues",
        fid::INTERRUPT_COALESCING => "Interrupt Coalescing",
        fid::INTERRUPT_VECTOR_CONFIG => "Interrupt Vector Configuration",
        fid::WRITE_ATOMICITY => "Write Atomicity Normal",
        fid::ASYNC_EVENT_CONFIG => "Async Event Configuration",
        fid::AUTONOMOUS_POWER_STATE => "Autonomous Power State Transition",
        fid::HOST_MEMORY_BUFFER => "Host Memory Buffer",
        fid::TIMESTAMP => "Timestamp",
        fid::KEEP_ALIVE_TIMER => "Keep Alive Timer",
        fid::SOFTWARE_PROGRESS_MARKER => "Software Progress Marker",
        fid::HOST_IDENTIFIER => "Host Identifier",
        _ => "Unknown",
    }
}

/// The SEL field of Get Features (CDW10 bits 10:8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum FeatureSelect {
    /// The current value.
    Current = 0,
    /// The default value.
    Default = 1,
    /// The saved value.
    Saved = 2,
    /// The supported capabilities.
    SupportedCapabilities = 3,
}

/// Number of Queues (FID 07h): counts of I/O submission and completion queues.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NumberOfQueues {
    /// I/O submission queues (not 0's based).
    pub sq: u16,
    /// I/O completion queues (not 0's based).
    pub cq: u16,
}

impl NumberOfQueues {
    /// Encodes CDW11 of Set Features / dword 0 of its completion (0's based counts).
    pub const fn to_dword(self) -> u32 {
        (self.sq.saturating_sub(1)) as u32 | ((self.cq.saturating_sub(1)) as u32) << 16
    }
    /// Decodes CDW11 or completion dword 0. A count of FFFFh (65536 queues, more than a
    /// queue id can name and which the spec does not allow) reads as 65535.
    pub const fn from_dword(v: u32) -> NumberOfQueues {
        NumberOfQueues {
            sq: ((v & 0xffff) as u16).saturating_add(1),
            cq: ((v >> 16) as u16).saturating_add(1),
        }
    }
}

/// Arbitration (FID 01h).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Arbitration {
    /// Arbitration burst (power of two; 7 = unlimited).
    pub ab: u8,
    /// Low priority weight (0's based).
    pub lpw: u8,
    /// Medium priority weight (0's based).
    pub mpw: u8,
    /// High priority weight (0's based).
    pub hpw: u8,
}

impl Arbitration {
    /// Decodes the feature value.
    pub const fn from_dword(v: u32) -> Arbitration {
        Arbitration {
            ab: (v & 0x7) as u8,
            lpw: (v >> 8) as u8,
            mpw: (v >> 16) as u8,
            hpw: (v >> 24) as u8,
        }
    }
    /// Encodes the feature value.
    pub const fn to_dword(self) -> u32 {
        (self.ab & 7) as u32
            | (self.lpw as u32) << 8
            | (self.mpw as u32) << 16
            | (self.hpw as u32) << 24
    }
}

/// Power Management (FID 02h).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PowerManagement {
    /// Power state.
    pub ps: u8,
    /// Workload hint.
    pub wh: u8,
}

impl PowerManagement {
    /// Decodes the feature value.
    pub const fn from_dword(v: u32) -> PowerManagement {
        PowerManagement {
            ps: (v & 0x1f) as u8,
            wh: ((v >> 5) & 0x7) as u8,
        }
    }
    /// Encodes the feature value.
    pub const fn to_dword(self) -> u32 {
        (self.ps & 0x1f) as u32 | ((self.wh & 7) as u32) << 5
    }
}

/// Threshold type select of Temperature Threshold (THSEL).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ThresholdType {
    /// Over temperature threshold.
    Over = 0,
    /// Under temperature threshold.
    Under = 1,
}

/// Temperature Threshold (FID 04h).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TemperatureThreshold {
    /// Threshold in kelvins.
    pub kelvin: u16,
    /// Sensor: 0 composite, 1-8 temperature sensors.
    pub sensor: u8,
    /// Over or under threshold.
    pub kind: ThresholdType,
}

impl TemperatureThreshold {
    /// Encodes CDW11.
    pub const fn to_dword(self) -> u32 {
        self.kelvin as u32 | ((self.sensor & 0xf) as u32) << 16 | (self.kind as u32) << 20
    }
    /// Decodes CDW11 (the selector bits) or, with only bits 15:0 set, a Get Features result.
    pub const fn from_dword(v: u32) -> TemperatureThreshold {
        TemperatureThreshold {
            kelvin: v as u16,
            sensor: ((v >> 16) & 0xf) as u8,
            kind: if (v >> 20) & 0x3 == 1 {
                ThresholdType::Under
            } else {
                ThresholdType::Over
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_encodings_round_trip() {
        let q = NumberOfQueues { sq: 64, cq: 32 };
        assert_eq!(q.to_dword(), 0x001f_003f);
        assert_eq!(NumberOfQueues::from_dword(0x001f_003f), q);
        // Found by the `identify` fuzz target: FFFFh overflowed the count (a panic in debug
        // builds, 0 queues in release builds).
        let most = NumberOfQueues::from_dword(u32::MAX);
        assert_eq!((most.sq, most.cq), (u16::MAX, u16::MAX));
        let a = Arbitration::from_dword(0x0302_0103);
        assert_eq!((a.ab, a.lpw, a.mpw, a.hpw), (3, 1, 2, 3));
        assert_eq!(a.to_dword(), 0x0302_0103);
        let t = TemperatureThreshold {
            kelvin: 343,
            sensor: 2,
            kind: ThresholdType::Under,
        };
        assert_eq!(t.to_dword(), 343 | 2 << 16 | 1 << 20);
        assert_eq!(TemperatureThreshold::from_dword(t.to_dword()), t);
        let p = PowerManagement { ps: 3, wh: 2 };
        assert_eq!(PowerManagement::from_dword(p.to_dword()), p);
        assert_eq!(feature_name(fid::NUMBER_OF_QUEUES), "Number of Queues");
        assert_eq!(feature_name(0x7f), "Unknown");
    }
}
