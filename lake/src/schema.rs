//! The lake's Parquet schema (the columns of the `events` table) and the
//! conversions between events and Arrow record batches.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
    UInt16Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType, UInt16Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hourglass_core::contract::EventEnvelope;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("project_id", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("user_id", DataType::Utf8, true),
        Field::new("anonymous_id", DataType::Utf8, true),
        Field::new("session_id", DataType::Utf8, true),
        Field::new("timestamp", ts.clone(), false),
        Field::new("received_at", ts, false),
        Field::new("value", DataType::Float64, true),
        Field::new("properties", DataType::Utf8, false),
        Field::new("schema_version", DataType::UInt16, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
});

/// One archived event: the envelope and where it was on Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeEvent {
    pub event: EventEnvelope,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("file does not have the lake's columns: {0}")]
    Shape(String),
}

/// Columns being filled for one file.
pub struct BatchBuilder {
    project_id: StringBuilder,
    event: StringBuilder,
    event_id: StringBuilder,
    user_id: StringBuilder,
    anonymous_id: StringBuilder,
    session_id: StringBuilder,
    timestamp: TimestampMillisecondBuilder,
    received_at: TimestampMillisecondBuilder,
    value: Float64Builder,
    properties: StringBuilder,
    schema_version: UInt16Builder,
    kafka_partition: Int32Builder,
    kafka_offset: Int64Builder,
    rows: usize,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self {
            project_id: StringBuilder::new(),
            event: StringBuilder::new(),
            event_id: StringBuilder::new(),
            user_id: StringBuilder::new(),
            anonymous_id: StringBuilder::new(),
            session_id: StringBuilder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            received_at: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            value: Float64Builder::new(),
            properties: StringBuilder::new(),
            schema_version: UInt16Builder::new(),
            kafka_partition: Int32Builder::new(),
            kafka_offset: Int64Builder::new(),
            rows: 0,
        }
    }
}

impl BatchBuilder {
    pub fn append(&mut self, e: &EventEnvelope, partition: i32, offset: i64) {
        self.project_id.append_value(&e.project_id);
        self.event.append_value(&e.event);
        self.event_id.append_value(e.event_id.to_string());
        self.user_id.append_option(e.user_id.as_deref());
        self.anonymous_id.append_option(e.anonymous_id.as_deref());
        self.session_id.append_option(e.session_id.as_deref());
        self.timestamp.append_value(e.timestamp.timestamp_millis());
        self.received_at
            .append_value(e.received_at.timestamp_millis());
        self.value.append_option(e.value);
        self.properties
            .append_value(serde_json::to_string(&e.properties).expect("a JSON map serializes"));
        self.schema_version.append_value(e.schema_version);
        self.kafka_partition.append_value(partition);
        self.kafka_offset.append_value(offset);
        self.rows += 1;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn finish(&mut self) -> RecordBatch {
        self.rows = 0;
        RecordBatch::try_new(
            SCHEMA.clone(),
            vec![
                Arc::new(self.project_id.finish()),
                Arc::new(self.event.finish()),
                Arc::new(self.event_id.finish()),
                Arc::new(self.user_id.finish()),
                Arc::new(self.anonymous_id.finish()),
                Arc::new(self.session_id.finish()),
                Arc::new(self.timestamp.finish()),
                Arc::new(self.received_at.finish()),
                Arc::new(self.value.finish()),
                Arc::new(self.properties.finish()),
                Arc::new(self.schema_version.finish()),
                Arc::new(self.kafka_partition.finish()),
                Arc::new(self.kafka_offset.finish()),
            ],
        )
        .expect("builders match the schema")
    }
}

/// zstd Parquet bytes of `batch`, with page statistics (readers prune by
/// `timestamp`, `event`, `project_id`).
pub fn to_parquet(batch: &RecordBatch, row_group_rows: usize) -> Result<Bytes, SchemaError> {
    let mut writer = parquet_writer(row_group_rows, Vec::new())?;
    writer.write(batch)?;
    Ok(Bytes::from(writer.into_inner()?))
}

/// Columns whose values are (nearly) all distinct.
const UNIQUE_PER_ROW: [&str; 5] = [
    "event_id",
    "session_id",
    "timestamp",
    "received_at",
    "kafka_offset",
];

/// A writer of the lake's Parquet files (the archiver's and compaction's),
/// `footer` added to the file's key-value metadata.
pub fn parquet_writer(
    row_group_rows: usize,
    footer: Vec<KeyValue>,
) -> Result<ArrowWriter<Vec<u8>>, SchemaError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_size(row_group_rows.max(1))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Pages end at the byte limit (1 MiB), not also every 20,000 rows:
        // DuckDB read a day of hour files 8 points faster, level with its
        // own files, and page statistics still prune by the MiB.
        .set_data_page_row_count_limit(usize::MAX)
        .set_created_by(format!("hourglass {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata((!footer.is_empty()).then_some(footer));
    // Nearly one value per row: a dictionary only costs readers a lookup
    // per value (DuckDB read a day of hour files 5 points faster without,
    // and the files are a fifth smaller).
    let props = UNIQUE_PER_ROW.iter().fold(props, |props, column| {
        props.set_column_dictionary_enabled(ColumnPath::from(*column), false)
    });
    let props = props.build();
    Ok(ArrowWriter::try_new(
        Vec::new(),
        SCHEMA.clone(),
        Some(props),
    )?)
}

/// Every event of one Parquet file.
pub fn read_parquet(bytes: Bytes) -> Result<Vec<LakeEvent>, SchemaError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(16 * 1024)
        .build()?;
    let mut out = Vec::new();
    for batch in reader {
        decode_batch(&batch?, &mut out)?;
    }
    Ok(out)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, SchemaError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| SchemaError::Shape(format!("no column {name}")))
}

pub(crate) fn strings<'a>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a arrow_array::StringArray, SchemaError> {
    column(batch, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| SchemaError::Shape(format!("{name} is not a string column")))
}

fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn decode_batch(
    batch: &RecordBatch,
    out: &mut Vec<LakeEvent>,
) -> Result<(), SchemaError> {
    let project = strings(batch, "project_id")?;
    let event = strings(batch, "event")?;
    let event_id = strings(batch, "event_id")?;
    let user = strings(batch, "user_id")?;
    let anon = strings(batch, "anonymous_id")?;
    let session = strings(batch, "session_id")?;
    let props = strings(batch, "properties")?;
    let shape = |n: &str| SchemaError::Shape(format!("{n} has the wrong type"));
    let ts = column(batch, "timestamp")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| shape("timestamp"))?;
    let rx = column(batch, "received_at")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| shape("received_at"))?;
    let value = column(batch, "value")?
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| shape("value"))?;
    let version = column(batch, "schema_version")?
        .as_primitive_opt::<UInt16Type>()
        .ok_or_else(|| shape("schema_version"))?;
    let partition = column(batch, "kafka_partition")?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| shape("kafka_partition"))?;
    let offset = column(batch, "kafka_offset")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| shape("kafka_offset"))?;
    let opt =
        |a: &arrow_array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_owned());
    out.reserve(batch.num_rows());
    for i in 0..batch.num_rows() {
        out.push(LakeEvent {
            event: EventEnvelope {
                schema_version: version.value(i),
                project_id: project.value(i).to_owned(),
                event_id: event_id.value(i).parse().map_err(|_| {
                    SchemaError::Shape(format!("event_id {:?} is not a UUID", event_id.value(i)))
                })?,
                event: event.value(i).to_owned(),
                user_id: opt(user, i),
                anonymous_id: opt(anon, i),
                session_id: opt(session, i),
                timestamp: millis(ts.value(i)),
                received_at: millis(rx.value(i)),
                value: (!value.is_null(i)).then(|| value.value(i)),
                properties: serde_json::from_str(props.value(i)).unwrap_or_default(),
            },
            partition: partition.value(i),
            offset: offset.value(i),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hourglass_core::contract::SCHEMA_VERSION;

    #[test]
    fn events_round_trip_through_parquet() {
        let t: DateTime<Utc> = "2026-01-01T10:00:00.123Z".parse().unwrap();
        let events: Vec<EventEnvelope> = (0..1000)
            .map(|i| EventEnvelope {
                schema_version: SCHEMA_VERSION,
                project_id: "p".into(),
                event_id: uuid::Uuid::now_v7(),
                event: format!("e{}", i % 3),
                user_id: (i % 2 == 0).then(|| format!("u{i}")),
                anonymous_id: (i % 2 == 1).then(|| format!("a{i}")),
                session_id: None,
                timestamp: t + chrono::Duration::milliseconds(i),
                received_at: t,
                value: (i % 5 == 0).then_some(i as f64 / 3.0),
                properties: serde_json::from_str(&format!(
                    r#"{{"path":"/p/{i}","n":{{"x":[1,2]}}}}"#
                ))
                .unwrap(),
            })
            .collect();
        let mut b = BatchBuilder::default();
        for (i, e) in events.iter().enumerate() {
            b.append(e, 3, 100 + i as i64);
        }
        let bytes = to_parquet(&b.finish(), 300).unwrap();
        let back = read_parquet(bytes).unwrap();
        assert_eq!(back.len(), 1000);
        for (i, (l, e)) in back.iter().zip(&events).enumerate() {
            assert_eq!(&l.event, e);
            assert_eq!((l.partition, l.offset), (3, 100 + i as i64));
        }
    }
}
