package lakehouse.silver;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.math.BigDecimal;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.api.java.UDF1;
import org.apache.spark.sql.types.DataType;

/**
 * Silver's fast path for one version of one event type: a record's bytes in, its
 * fields (wire types: string, long, double) out when the record certainly satisfies
 * the version's JSON Schema, else null.
 *
 * <p>One streaming pass of Jackson's parser over the bytes does what Spark's
 * from_json, to_json and a dozen SQL predicates did. The rules come from a spec
 * that Python derives from the schema file (pipelines/silver/fastpath.py), and the
 * Python classifier stays the definition: anything unusual is declined (null), never
 * decided here. Declined: a top-level value that is not an object, a key the schema
 * does not list, a key twice, a null, an array or object value, a value not of
 * exactly its JSON type (an integer field takes no 5.0, no 2^70), a string holding
 * a lone surrogate, a byte-order mark, a date-time outside one strict form.
 */
public final class JsonSchemaFastPath implements UDF1<byte[], Row> {
  private static final long serialVersionUID = 1L;
  private static final JsonFactory JSON = new JsonFactory();
  // Upper-case T, at most microseconds, Z or +hh:mm (what Spark's cast and Python's
  // fromisoformat both read the same way).
  private static final Pattern DATE_TIME = Pattern.compile(
      "\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d{1,6})?(Z|[+-]\\d{2}:\\d{2})");

  private enum Kind { STRING, INTEGER, NUMBER }

  private static final class Property implements java.io.Serializable {
    private static final long serialVersionUID = 1L;
    final String name;
    final Kind kind;
    final boolean required;
    final Object constant;       // String, Long or BigDecimal; null when absent
    final Set<Object> allowed;   // enum; null when absent
    final BigDecimal minimum;
    final BigDecimal maximum;
    final Pattern pattern;       // matched whole
    final boolean dateTime;

    Property(JsonNode spec) {
      name = spec.get("name").asText();
      kind = Kind.valueOf(spec.get("type").asText().toUpperCase());
      required = spec.path("required").asBoolean(false);
      constant = spec.has("const") ? literal(spec.get("const")) : null;
      if (spec.has("enum")) {
        allowed = new HashSet<>();
        for (JsonNode value : spec.get("enum")) {
          allowed.add(literal(value));
        }
      } else {
        allowed = null;
      }
      minimum = spec.has("minimum") ? spec.get("minimum").decimalValue() : null;
      maximum = spec.has("maximum") ? spec.get("maximum").decimalValue() : null;
      pattern = spec.has("pattern") ? Pattern.compile(spec.get("pattern").asText()) : null;
      dateTime = spec.path("date_time").asBoolean(false);
    }

    private Object literal(JsonNode value) {
      switch (kind) {
        case STRING:
          if (!value.isTextual()) {
            throw new IllegalArgumentException(name + ": a string field's literal must be a string");
          }
          return value.asText();
        case INTEGER:
          if (!value.canConvertToExactIntegral() || !value.canConvertToLong()) {
            throw new IllegalArgumentException(name + ": an integer field's literal must be a long");
          }
          return value.asLong();
        default:
          return value.decimalValue().stripTrailingZeros();
      }
    }
  }

  private final Property[] properties;
  private final Map<String, Integer> index = new HashMap<>();

  /** @param spec JSON: {"properties": [{"name", "type", "required", "const", "enum",
   *  "minimum", "maximum", "pattern", "date_time"}, ...]} in the row's field order. */
  public JsonSchemaFastPath(String spec) throws IOException {
    JsonNode root = new ObjectMapper().readTree(spec);
    List<Property> found = new ArrayList<>();
    for (JsonNode property : root.get("properties")) {
      found.add(new Property(property));
    }
    if (found.size() > 64) {
      throw new IllegalArgumentException("at most 64 properties (a long bitmask tracks them)");
    }
    properties = found.toArray(new Property[0]);
    for (int i = 0; i < properties.length; i++) {
      index.put(properties[i].name, i);
    }
  }

  /** Registers the fast path of one schema version as a SQL function `name`. */
  public static void register(SparkSession spark, String name, String spec, String rowType)
      throws IOException {
    spark.udf().register(name, new JsonSchemaFastPath(spec), DataType.fromJson(rowType));
  }

  @Override
  public Row call(byte[] value) {
    if (value == null || value.length == 0 || (value[0] & 0xFF) == 0xEF) {
      return null;  // 0xEF: a byte-order mark, which Python's json refuses
    }
    try (JsonParser parser = JSON.createParser(value)) {
      return parse(parser);
    } catch (IOException | RuntimeException e) {
      return null;  // not JSON, or a number Jackson refuses: the Python classifier says why
    }
  }

  private Row parse(JsonParser parser) throws IOException {
    if (parser.nextToken() != JsonToken.START_OBJECT) {
      return null;
    }
    Object[] fields = new Object[properties.length];
    long seen = 0L;
    JsonToken token;
    while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
      Integer at = index.get(parser.currentName());
      if (at == null || (seen & (1L << at)) != 0) {
        return null;  // a key the schema does not list, or a key twice
      }
      seen |= 1L << at;
      Property property = properties[at];
      Object field = read(parser, parser.nextToken(), property);
      if (field == null || !valid(property, field)) {
        return null;
      }
      fields[at] = field;
    }
    if (token != JsonToken.END_OBJECT || parser.nextToken() != null) {
      return null;  // trailing content after the object
    }
    for (int i = 0; i < properties.length; i++) {
      if (properties[i].required && (seen & (1L << i)) == 0) {
        return null;
      }
    }
    return RowFactory.create(fields);
  }

  /** The value under `token` as its wire type, or null when it is not exactly that type. */
  private static Object read(JsonParser parser, JsonToken token, Property property)
      throws IOException {
    switch (property.kind) {
      case STRING:
        if (token != JsonToken.VALUE_STRING) {
          return null;
        }
        String text = parser.getText();
        return wellFormed(text) ? text : null;
      case INTEGER:
        if (token != JsonToken.VALUE_NUMBER_INT) {
          return null;
        }
        JsonParser.NumberType type = parser.getNumberType();
        return type == JsonParser.NumberType.INT || type == JsonParser.NumberType.LONG
            ? parser.getLongValue() : null;
      default:
        // An integer in a number field is left to Python (it reads it as an int).
        if (token != JsonToken.VALUE_NUMBER_FLOAT) {
          return null;
        }
        double number = parser.getDoubleValue();
        return Double.isFinite(number) ? number : null;
    }
  }

  /** No unpaired UTF-16 surrogate (from a `\ud800` escape): Python would keep one. */
  private static boolean wellFormed(String text) {
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if (Character.isHighSurrogate(c) && i + 1 < text.length()
          && Character.isLowSurrogate(text.charAt(i + 1))) {
        i++;
      } else if (Character.isSurrogate(c)) {
        return false;
      }
    }
    return true;
  }

  private static boolean valid(Property property, Object field) {
    Object comparable = property.kind == Kind.NUMBER
        ? BigDecimal.valueOf((Double) field).stripTrailingZeros() : field;
    if (property.constant != null && !property.constant.equals(comparable)) {
      return false;
    }
    if (property.allowed != null && !property.allowed.contains(comparable)) {
      return false;
    }
    if (property.minimum != null || property.maximum != null) {
      BigDecimal number = field instanceof Long
          ? BigDecimal.valueOf((Long) field) : BigDecimal.valueOf((Double) field);
      if (property.minimum != null && number.compareTo(property.minimum) < 0) {
        return false;
      }
      if (property.maximum != null && number.compareTo(property.maximum) > 0) {
        return false;
      }
    }
    if (property.pattern != null && !property.pattern.matcher((String) field).matches()) {
      return false;
    }
    return !property.dateTime || isDateTime((String) field);
  }

  /** One strict form of an RFC 3339 date-time whose UTC instant has a year 1 to 9999. */
  private static boolean isDateTime(String text) {
    if (!DATE_TIME.matcher(text).matches()) {
      return false;
    }
    try {
      OffsetDateTime parsed = OffsetDateTime.parse(text, DateTimeFormatter.ISO_OFFSET_DATE_TIME);
      int year = parsed.withOffsetSameInstant(ZoneOffset.UTC).getYear();
      return year >= 1 && year <= 9999;
    } catch (RuntimeException e) {
      return false;  // Feb 30, hour 24, second 60, an offset beyond 18 hours
    }
  }
}
